"""The FastAPI application: FHIR REST, bulk export, auth (and, as they land, domain APIs and pages)."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from joinedup import __version__
from joinedup.api import auth, export, fhir_routes, governance_routes, limits, privacy_routes, security
from joinedup.api.responses import install_error_handlers
from joinedup.config import Settings, get_settings
from joinedup.governance.gate import get_gate


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application for one database."""
    settings = settings or get_settings()
    gate = get_gate(settings.database_url)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        import gc

        gate.store.optimize()
        gc.collect()
        gc.freeze()  # long-lived startup objects leave the collector's scans: shorter pauses under load
        yield
        gate.audit.flush()

    app = FastAPI(title="JoinedUp", version=__version__, lifespan=lifespan,
                  description="Open integrated care platform: FHIR R4 shared care record, bulk data, "
                              "governance and care coordination APIs.")
    app.state.settings = settings
    app.state.gate = gate
    install_error_handlers(app)
    limits.install(app, settings)
    security.install(app, settings)
    app.include_router(auth.router)
    app.include_router(export.router)
    app.include_router(fhir_routes.everything_router)
    app.include_router(fhir_routes.router)
    app.include_router(governance_routes.router)
    governance_routes.install(app)
    app.include_router(privacy_routes.router)
    privacy_routes.install(app)
    from joinedup.conflicts.routes import api_router as conflicts_api
    from joinedup.conflicts.routes import cds_router
    from joinedup.conflicts.web_routes import router as medicines_safety_pages
    app.include_router(cds_router)
    app.include_router(conflicts_api)
    app.include_router(medicines_safety_pages)
    from joinedup.record import routes as record_routes
    from joinedup.web import routes as web_routes

    app.include_router(record_routes.router)
    # care coordination routers (care plans, tasks, referrals, MDT, journey, notifications, virtual wards)
    from joinedup.care import plan_routes
    app.include_router(plan_routes.api_router)
    app.include_router(plan_routes.web_router)
    from joinedup.care import journey_routes, notification_routes, notifications, subscriptions, ward_routes
    app.include_router(journey_routes.router)
    app.include_router(notification_routes.router)
    app.include_router(ward_routes.router)
    notifications.install(gate)  # background notification worker, fed by gate.on_written
    subscriptions.install(app)  # refuse undeliverable FHIR Subscriptions (400) before they are stored
    from joinedup.care import mdt_routes, referral_routes
    app.include_router(referral_routes.api_router)
    app.include_router(referral_routes.web_router)
    app.include_router(mdt_routes.api_router)
    app.include_router(mdt_routes.web_router)
    app.include_router(web_routes.router)  # "/" is the web home (search and my patients); /docs stays
    app.mount("/static", StaticFiles(directory=web_routes.STATIC_DIR), name="static")

    @app.get("/healthz", include_in_schema=False)
    async def health():
        return {"status": "ok", "version": __version__}

    from joinedup.governance.audit import AuditDurabilityMiddleware

    # added last = outermost: no response (the other middleware's refusals included) leaves before its audit events
    # are committed
    app.add_middleware(AuditDurabilityMiddleware)
    return app


def app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory joinedup.api.app:app_from_env`."""
    return create_app()
