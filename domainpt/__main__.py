"""`python -m domainpt ...` (also what `torchrun -m domainpt` and `accelerate launch -m domainpt` run)."""
from domainpt.cli import main

if __name__ == "__main__":
    main()
