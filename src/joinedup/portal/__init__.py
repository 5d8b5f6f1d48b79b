"""The person's own portal (patients and the carers they give access to): their plan and what matters, appointments
and next steps, messages to their care team, correction requests, who looked, their sharing choices and carers.

`service` reads and writes through the one gate as the person (or the carer); `proxy` the carer grants; `routes` the
pages and `/api/me/...`."""
