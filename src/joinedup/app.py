"""The application root: assembles the FastAPI app from each domain's routers, its middleware and background work.

Read top to bottom, this is the whole web surface of JoinedUp:

* `api/`        FHIR REST (`/fhir`), bulk export, sign-in (`/auth`), governance and privacy APIs (`/api/...`)
* `conflicts/`  CDS Hooks (`/cds-services`), the conflicts API and the medicines-safety pages
* `record/`     the whole-person record summary (`/api/patients/...`)
* `care/`       care plans, tasks, referrals and advice, MDT, journey, notifications, virtual wards (API and pages)
* `web/`        the web home, person page and sign-in pages; static files

Middleware, innermost first: reads by id (`GET /fhir/{type}/{id}` straight to its handler), request limits, web
security (trusted hosts, CSRF, headers), access notices, stated reasons, Subscription checks, and outermost the audit
durability wait (no response before its audit is committed).
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from joinedup import __version__
from joinedup.api import auth, export, fhir_routes, governance_routes, limits, privacy_routes, security
from joinedup.api.responses import install_error_handlers
from joinedup.care.journey import routes as journey_routes
from joinedup.care.mdt import routes as mdt_routes
from joinedup.care.notifications import routes as notification_routes
from joinedup.care.notifications import service as notifications
from joinedup.care.notifications import subscriptions
from joinedup.care.plans import routes as plan_routes
from joinedup.care.referrals import routes as referral_routes
from joinedup.care.wards import routes as ward_routes
from joinedup.config import Settings, get_settings
from joinedup.conflicts import routes as conflicts_routes
from joinedup.conflicts import web_routes as medicines_safety_pages
from joinedup.governance.audit import AuditDurabilityMiddleware
from joinedup.governance.gate import get_gate
from joinedup.interop.linkage import routes as linkage_routes
from joinedup.interop.linkage import web_routes as linkage_pages
from joinedup.population.cost import routes as cost_routes
from joinedup.population.dashboard import routes as dashboard_routes
from joinedup.population.measures import routes as measure_routes
from joinedup.population.registers import routes as register_routes
from joinedup.population.risk import routes as risk_routes
from joinedup.portal import routes as portal_routes
from joinedup.record import routes as record_routes
from joinedup.system import routes as system_routes
from joinedup.system import workforce_routes
from joinedup.system.pathways import routes as pathway_routes
from joinedup.web import analytics as analyst_pages
from joinedup.web import medicines as medicines_review_pages
from joinedup.web import pages as web_pages
from joinedup.web import privacy as privacy_pages
from joinedup.web import routes as web_routes
from joinedup.web import social_care as social_care_pages

ROUTERS = [
    # platform: sign-in, FHIR REST, bulk export, governance
    auth.router, export.router, fhir_routes.everything_router, fhir_routes.router, governance_routes.router,
    privacy_routes.router,
    # decision support
    conflicts_routes.cds_router, conflicts_routes.api_router, medicines_safety_pages.router,
    # the whole-person record, and the person's own portal (their plan, messages, sharing choices and carers)
    record_routes.router, record_routes.pages, portal_routes.router,
    # care coordination
    plan_routes.api_router, plan_routes.web_router, journey_routes.router, notification_routes.router,
    ward_routes.router, referral_routes.api_router, referral_routes.web_router, mdt_routes.api_router,
    mdt_routes.web_router,
    # each role's pages: privacy officer, analyst, pharmacist (medicines reviews), social care
    privacy_pages.router, analyst_pages.router, medicines_review_pages.router, social_care_pages.router,
    # the services directory and the partnership board's integration self-assessment
    system_routes.api_router, system_routes.web_router,
    # pathway and process analytics (process map, variants, gaps) for analysts and the board
    pathway_routes.api_router, pathway_routes.web_router,
    # the workforce view: caseload, overdue work and handovers per team for the board
    workforce_routes.api_router, workforce_routes.web_router,
    # record linkage for records without an NHS number: API and the clerical review page
    linkage_routes.router, linkage_pages.router,
    # population health: risk and burden, registers and care-gap worklists
    risk_routes.api_router, risk_routes.web_router, register_routes.api_router, register_routes.web_router,
    # shared outcome measures across organisations (analysts, the partnership board)
    measure_routes.api_router,
    # cost of care across settings and the population dashboard (precomputed, published figures)
    cost_routes.api_router, dashboard_routes.web_router,
    # the web home ("/"), person page and sign-in pages last: /docs stays FastAPI's
    web_routes.router,
]


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application for one database."""
    settings = settings or get_settings()
    gate = get_gate(settings.database_url)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        import gc

        gate.optimize()
        gc.collect()
        gc.freeze()  # long-lived startup objects leave the collector's scans: shorter pauses under load
        # A request allocates thousands of short-lived objects (a lifetime record's summary: hundreds of
        # thousands, nearly all alive until it is answered); collecting the youngest generation every 700
        # allocations re-scanned them over and over. Every 10,000 costs a few MB at most.
        gc.set_threshold(10_000, 10, 10)
        yield
        gate.flush_audit()

    # FastAPI's own OpenTelemetry bridge off: nothing here configures a provider, and it asked on every request
    app = FastAPI(title="JoinedUp", version=__version__, lifespan=lifespan,
                  telemetry={"tracing": False, "metrics": False, "logs": False},
                  description="Open integrated care platform: FHIR R4 shared care record, bulk data, "
                              "governance and care coordination APIs.")
    app.state.settings = settings
    app.state.gate = gate
    install_error_handlers(app)
    web_pages.install(app)  # a page that needs someone signed in sends nobody to the log-in page
    app.add_middleware(fhir_routes.DirectRead)  # innermost: reads by id skip the router (same handler and errors)
    limits.install(app, settings)
    security.install(app, settings)
    governance_routes.install(app)  # break-glass access notices on responses
    privacy_routes.install(app)  # a privacy officer's stated reason (X-JoinedUp-Reason) reaches the gate
    for router in ROUTERS:
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=web_pages.STATIC_DIR), name="static")
    notifications.install(gate)  # background notification worker, fed by gate.on_written
    subscriptions.install(app)  # refuse undeliverable FHIR Subscriptions (400) before they are stored

    @app.get("/healthz", include_in_schema=False)
    async def health():
        return {"status": "ok", "version": __version__}

    # added last = outermost: no response (the other middleware's refusals included) leaves before its audit events
    # are committed
    app.add_middleware(AuditDurabilityMiddleware)
    return app


def app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory joinedup.app:app_from_env` (settings from the environment)."""
    return create_app()
