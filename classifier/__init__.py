"""Second stage: a crop around a candidate lesion -> P(malignant), and where in the crop the model looked.

    from classifier import MalignancyClassifier
    clf = MalignancyClassifier.load("runs/classifier/train/mias")
    crop, to_crop = clf.crop(mammogram.pixels, box)          # the training crop, and original -> crop
    p = clf.predict(crop[None]); cam = clf.gradcam(crop[None])

Importing this package imports no framework; `classifier.model`, `.train`, `.gradcam` and `.inference` load
TensorFlow. mammo.runtime goes first so that the import order stays safe whoever imports us.
"""
import mammo.runtime  # noqa: F401  (must stay the first import)


def __getattr__(name):  # lazy: `from classifier import MalignancyClassifier` without importing TF up front
    if name == "MalignancyClassifier":
        from classifier.inference import MalignancyClassifier
        return MalignancyClassifier
    raise AttributeError(name)
