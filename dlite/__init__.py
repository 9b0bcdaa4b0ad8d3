"""DiffuserLite: the method (data, models, training, planning, evaluation)."""
