"""steu-patch: class-level unlearning for Hugging Face sequence classifiers as forget patches."""

__version__ = "0.1.0"
