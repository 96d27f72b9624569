"""Command-line front end of steu-patch, installed as ``steu_patch_cli``."""
