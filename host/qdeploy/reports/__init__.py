"""Bench reports at home: the SQLite store, history and regressions, plots and HTML."""
