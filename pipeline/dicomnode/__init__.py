"""The DICOM node (issue 21): results as DICOM objects, DICOMweb in and out, a storage listener (`pipeline listen`)."""
