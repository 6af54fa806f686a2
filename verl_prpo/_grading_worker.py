"""Entry point of one grading worker process (``verl_prpo.math_grading.GradingPool``); not for other use.

``python -m verl_prpo._grading_worker FD MEMORY_LIMIT_BYTES``: FD is this process's end of a socket pair to the
pool, MEMORY_LIMIT_BYTES its address-space limit (0: none).
"""

import sys
from multiprocessing.connection import Connection

from verl_prpo.math_grading import _worker_main

if __name__ == "__main__":
    _worker_main(Connection(int(sys.argv[1])), int(sys.argv[2]) or None)
