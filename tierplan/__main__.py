from tierplan.cli import main

main()
