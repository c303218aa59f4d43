"""The pipeline users run: full-image inference, evaluation, ROI export."""
