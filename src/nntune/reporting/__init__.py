"""The report (``nntune report``) and the figures it and the CLI draw."""
