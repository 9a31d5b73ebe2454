from imagerelay.cli import main

main()
