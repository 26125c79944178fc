"""Measuring filterd's classifiers on labelled mail: a tool beside the product, not on the mail path.

Nothing under `filterd/` imports this package at run time; `filterctl eval` imports it when the
command runs.  It ships in the same distribution so an admin can measure a model on their own mail.

    corpus.py    labelled folders (manifest.csv, or ham/ and spam/), verdict headers stripped
    learners.py  what is measured: filterd's Bayes, bogofilter, or any scorer (raw bytes -> float)
    runs.py      the splits: hash halves, first half / second half in order, online, A -> B
    metrics.py   (1-ROCA)%, spam missed at <= 0.1% ham flagged, the same code for every filter
    report.py    the table
"""
