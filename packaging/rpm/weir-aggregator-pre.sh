#COMMON#
weir_user
