"""Server-rendered pages: `pages` the page layer every page route imports (rendering, log-in redirect, error page,
service and panel helpers), `routes` the platform's own pages (home, person page, log-in, the person's own view),
`templates/` and `static/`. Domain pages live with their domain (care/, conflicts/)."""
