def pytest_configure(config):
    # Also to be registered in the project's pytest config; harmless if registered twice.
    config.addinivalue_line("markers", "slow: long kill loops and fault injections (deselect with -m 'not slow')")
