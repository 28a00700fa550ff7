"""`lbfood sweep`: does LFF help on this data, and with which δ, μ, λ and scorer? (Optuna, leak-free.)"""
