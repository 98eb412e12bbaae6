"""Reports: Markdown tables and PNG plots of evaluations and training runs."""
