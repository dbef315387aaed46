"""Web pages for accounts: sign up, log in, and the signed-in home page."""
from __future__ import annotations

from django import forms
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import AuthenticationForm
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from accounts import selectors, services
from platform_site.errors import ModelhostError


class EmailLoginForm(AuthenticationForm):
    username = forms.EmailField(label="Email", widget=forms.EmailInput(attrs={"autofocus": True, "autocomplete": "email"}))


class SignupForm(forms.Form):
    email = forms.EmailField(widget=forms.EmailInput(attrs={"autocomplete": "email"}))
    name = forms.CharField(required=False, max_length=150)
    organization = forms.CharField(required=False, max_length=150, help_text="Your first organization; you can add more later.")
    password = forms.CharField(widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}), help_text="At least 10 characters, not too common.")


@login_required
def home(request: HttpRequest) -> HttpResponse:
    memberships = selectors.memberships_of_user(user=request.user)
    return render(request, "accounts/home.html", {"memberships": memberships})


def signup(request: HttpRequest) -> HttpResponse:
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            user, _ = services.register_user(**form.cleaned_data, ip_address=request.META.get("REMOTE_ADDR"))
        except ModelhostError as exc:
            for item in exc.errors or [{"field": None, "message": exc.detail}]:
                form.add_error(item.get("field") if item.get("field") in form.fields else None, item["message"])
        else:
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            return redirect("home")
    return render(request, "accounts/signup.html", {"form": form})
