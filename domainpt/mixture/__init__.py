"""The mixture planner (plan-mixture): pilot runs at several replay shares and a law fitted to them."""
