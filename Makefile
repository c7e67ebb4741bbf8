.PHONY: install demo test lint bench

install:
	bash infra/install.sh

demo:
	bash infra/demo.sh

test:
	bash infra/test.sh

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && bash infra/typecheck.sh

bench:
	.venv/bin/python benchmarks/train_throughput.py
	.venv/bin/python benchmarks/serve_latency.py
