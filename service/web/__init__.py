"""The service's HTML pages: job list, live job page, submission form (templates, static)."""
