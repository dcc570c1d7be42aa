# Registers the suite's plugins for every pytest run started in this repository.
pytest_plugins = ["fixtures.bench_session", "fixtures.cuda_timer"]
