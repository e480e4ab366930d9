"""breastdx: breast-cancer imaging inference (mammography, ultrasound, histopathology)."""

__version__ = "0.1.0"
