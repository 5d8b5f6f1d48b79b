"""Is our integration working? The services and roles directory across settings (`service`), the partnership board's
integration self-assessment (`assessment`) with live evidence from the record (`evidence`) and its charts."""
