from lbfood.cli import main

main()
