"""Reports over finished runs: tidy results, paper-style tables, the Bokeh comparison."""
