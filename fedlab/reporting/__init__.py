"""Numbers and figures as studies report them: intervals and paired tests, plots, quoted numbers. Imports nothing of fedlab's."""
