"""`python eval/bench_transformer.py ...`: the benchmark in `diffsparse/bench/transformer.py` (also `diffsparse bench transformer`);
see its docstring (`--help`) for what it measures."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout without pip install

from diffsparse.bench.transformer import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
