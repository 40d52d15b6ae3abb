"""The report of a run folder (`report.md` + a self-contained `report.html`), built from its files only."""
