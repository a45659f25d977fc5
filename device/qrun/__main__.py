from qrun.cli import main

main()
