"""``python -m data_prep`` = ``lp-prep`` (see ``data_prep.cli``)."""

from data_prep.cli import main

if __name__ == "__main__":
    main()
