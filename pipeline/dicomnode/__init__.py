"""The DICOM node: results as DICOM objects, and `pipeline listen`, a storage SCP that analyses what it receives."""
