"""Reports a person opens: one self-contained HTML file (figures embedded) from what a run, a sweep's
study or an MLflow experiment recorded, logged back to MLflow beside what it describes."""
