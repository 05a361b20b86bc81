"""A package of model builders as an organisation would install at its sites, for the `python` model kind."""
