"""``python -m producer`` is the ``producer`` command."""

from producer.cli import main

main()
