"""What lives next to the plugin and is not installed by pip: the credit-assignment lab (``credit_assignment``).

Run its modules from the repository root, e.g. ``python -m examples.credit_assignment.quickstart``.
"""
