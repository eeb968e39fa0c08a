"""sonodistill: ultrasound image and video models from few labels, by knowledge distillation."""

__version__ = "0.1.0"
