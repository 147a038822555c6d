"""The demo model served by images/model-server; kept free of drtool imports so the image can carry it alone."""
