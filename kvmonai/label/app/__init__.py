"""The MONAI Label app folder: ``monailabel start_server --app <this folder>`` loads ``main.py``."""
