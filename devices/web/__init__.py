"""Server-rendered pages (Django templates + htmx) for this app; views call selectors and services only."""
