"""A credit-assignment testbed small enough for 2 CPU cores.

* :mod:`~verl_prpo.testbed.task`: chained arithmetic with verifiable steps, a noisy solver, step labels, grading;
* :mod:`~verl_prpo.testbed.build`: the cached assets (tokenizer, SFT policy, trained PRM, verl parquet);
* :mod:`~verl_prpo.testbed.evaluate`: held-out greedy / sampled accuracy, response length, entropy;
* :mod:`~verl_prpo.testbed.grid`: every estimator under the same budget through verl's ``main_ppo``, with the
  results file, table and curves.
"""
