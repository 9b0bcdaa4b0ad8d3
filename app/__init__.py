"""DiffuserLite Lab run server: runs, workers, users and pages. Never imports torch."""
