"""The analysis of finished (or running) searches, from their results files alone.

Why a package beside the search, not inside it: it must run on a laptop without torch,
Ray or a cluster, trusting only the files search/schema.py declares. Modules, in the
order data flows: loading (folders and URIs -> Search), kinds (each searched parameter's
kind, from search.json's space), tables, importance, plots (one registry), report.
The command line is analyze.py.
"""
