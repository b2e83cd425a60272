"""The package version, in a leaf module so bastion's own modules can read it without
importing the whole package."""

__version__ = "0.1.0.dev0"
