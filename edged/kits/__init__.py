"""The kits bundled with edged (retail, clinic): domains built on the public kit interface,
``edged.agents.kit``, and found like any other through the ``edged.kits`` entry points."""
