"""Root pytest configuration: applies to the tests and to nbval's notebook items alike."""


def pytest_collection_modifyitems(items):
    """nbval waits only 5 s for a cell's outputs to arrive after it finishes; on a loaded 2-core machine that is
    not always enough, and a late output is not a wrong output. Wait up to 60 s."""
    for item in items:
        if hasattr(item, "output_timeout"):
            item.output_timeout = 60
