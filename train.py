"""python train.py [overrides]  —  see README.md and conf/train.yaml."""

if __name__ == "__main__":
    # Imported here, not at the top: the processes that record and ingest the demo are spawned, and each spawned
    # process imports this file again (as __mp_main__); an import at the top would load Lightning in every one.
    from minesweep.train import main

    main()
