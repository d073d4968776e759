def pytest_configure(config):
    # pyproject registers no markers; test_fsdp2.py is marked slow (it still runs by default).
    config.addinivalue_line("markers", "slow: takes several seconds (multi-process runs)")
