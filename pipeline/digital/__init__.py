"""Digital mammograms (FFDM) learned from image labels: the global branch's feature cache, its woman-level
cross-validation, the shipped model and the reports (model card figures, contact sheet)."""
