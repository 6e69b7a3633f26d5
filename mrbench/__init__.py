"""mrbench: which training regime reconstructs best, on seen and unseen MRI contrasts."""

__version__ = "0.1.0"
