from provisioner.cli import main

if __name__ == "__main__":  # guarded: a spawned child process (large inventories) imports this module
    main()
